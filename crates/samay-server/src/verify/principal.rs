//! Who a verified token speaks for, and the errors a verification ends with.

use std::fmt;

/// A user: the subject (`sub`) an issuer vouches for. Two issuers may hand out the same
/// subject to different people, so the issuer is part of the identity; the batch body's
/// `user_id` is never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The issuer exactly as configured (and as the token's `iss` / introspection's `iss`).
    pub issuer: String,
    /// The token's `sub`: non-empty, at most [`MAX_SUBJECT_BYTES`].
    pub subject: String,
}

/// OpenID Connect Core §2: a subject is at most 255 ASCII characters. Longer ones are refused
/// so that a stored user id stays small.
pub const MAX_SUBJECT_BYTES: usize = 255;

impl Principal {
    /// The issuer-qualified subject, the stored user id and what `GET v1/me` shows:
    /// `ESCAPED_ISSUER#SUBJECT`, where `ESCAPED_ISSUER` is the issuer with every `%` written
    /// `%25` and every `#` written `%23`, and the subject follows verbatim.
    ///
    /// Unambiguous: the escaped issuer holds no `#`, so the first `#` ends it, and the escape is
    /// reversible ([`Principal::from_user_key`]). A valid issuer identifier has no fragment, so
    /// for real issuers the key reads as `https://idp.example#alice`; only an issuer with a `%`
    /// (a percent-encoded path) shows an escape.
    pub fn user_key(&self) -> String {
        let mut key = String::with_capacity(self.issuer.len() + 1 + self.subject.len());
        for c in self.issuer.chars() {
            match c {
                '%' => key.push_str("%25"),
                '#' => key.push_str("%23"),
                c => key.push(c),
            }
        }
        key.push('#');
        key.push_str(&self.subject);
        key
    }

    /// The inverse of [`Principal::user_key`]; `None` for a string it cannot have produced.
    pub fn from_user_key(key: &str) -> Option<Principal> {
        let (escaped, subject) = key.split_once('#')?;
        let mut issuer = String::with_capacity(escaped.len());
        let mut rest = escaped;
        while let Some(at) = rest.find('%') {
            issuer.push_str(&rest[..at]);
            let escape = rest.get(at..at + 3)?;
            issuer.push(match escape {
                "%25" => '%',
                "%23" => '#',
                _ => return None,
            });
            rest = &rest[at + 3..];
        }
        issuer.push_str(rest);
        Some(Principal {
            issuer,
            subject: subject.to_string(),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user_key())
    }
}

/// Why a bearer token was not accepted. Every variant but [`AuthFailure::IssuerUnavailable`]
/// is the client's problem (401: get a new token); that one is ours or the issuer's (503: try
/// again later), because refusing a good token while the issuer's keys cannot be fetched would
/// make clients throw away valid logins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No token at all (an empty bearer).
    #[error("no bearer token")]
    Missing,
    /// Not a well-formed JWS or token: bad base64, not JSON, wrong claim types, too long,
    /// an unsupported `crit` header, a JWE.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not verify with the issuer's key.
    #[error("bad token signature")]
    BadSignature,
    /// `aud` is missing or does not contain the configured audience.
    #[error("token is not for this audience")]
    BadAudience,
    /// `iss` is missing or not one of the configured issuers (exact match).
    #[error("token issuer is not accepted")]
    BadIssuer,
    /// No key of the issuer has the token's `kid` (even after a refetch of its JWKS, or a
    /// refetch was not allowed yet).
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// `alg` is not RS256, ES256 or EdDSA, or does not fit the key the `kid` names.
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// A required claim is missing or empty (`sub`, `exp`).
    #[error("token lacks a required claim: {0}")]
    MissingClaim(&'static str),
    /// Not an access token: a JWT whose `typ` says it is something else (an ID token, a
    /// logout token), or an introspected token of another type (`DPoP`, a refresh token).
    #[error("not a bearer access token")]
    WrongTokenType,
    /// Introspection says the token is not active (revoked, expired, unknown).
    #[error("token is not active")]
    Inactive,
    /// An opaque token, and no configured issuer can introspect it (no client credentials or
    /// no `introspection_endpoint` in its discovery document).
    #[error("opaque tokens are not accepted")]
    OpaqueNotSupported,
    /// The issuer's discovery, JWKS or introspection endpoint failed (unreachable, timeout,
    /// error status, oversized or invalid answer). Retryable: answer 503, not 401.
    #[error("token issuer unavailable: {0}")]
    IssuerUnavailable(String),
}

impl AuthFailure {
    /// A short fixed label, for metrics (`auth_failures_total{reason=…}`) and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::BadAudience => "bad_audience",
            AuthFailure::BadIssuer => "bad_issuer",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthFailure::MissingClaim(_) => "missing_claim",
            AuthFailure::WrongTokenType => "wrong_token_type",
            AuthFailure::Inactive => "inactive",
            AuthFailure::OpaqueNotSupported => "opaque_not_supported",
            AuthFailure::IssuerUnavailable(_) => "issuer_unavailable",
        }
    }

    /// The `WWW-Authenticate` header of the 401 answer (RFC 6750 §3): no error code when there
    /// was no token, `invalid_token` with this failure's text otherwise. `None` for
    /// [`AuthFailure::IssuerUnavailable`], which is answered 503, not 401.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthFailure::Missing => Some("Bearer".to_string()),
            AuthFailure::IssuerUnavailable(_) => None,
            // Every other message is fixed ASCII text without `"` or `\` (RFC 6750 §3's
            // error_description charset).
            other => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{other}\""
            )),
        }
    }

    /// True when the same token may be accepted later without the client doing anything:
    /// the server answers 503 (with `Retry-After`) instead of 401.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthFailure::IssuerUnavailable(_))
    }
}
