//! The provider's records in SQLite (tables `oauth_*`): issuing a grant's tokens, redeeming a
//! code once, rotating a refresh token (a reuse revokes the grant), revoking a grant.

use super::*;

/// Inserts a fresh access and refresh token for `grant`.
pub(super) fn insert_tokens(
    tx: &rusqlite::Transaction<'_>,
    grant_id: &str,
    now: i64,
    access_ttl_ms: i64,
) -> rusqlite::Result<(String, String)> {
    let access = random_secret();
    let refresh = random_secret();
    tx.execute(
        "INSERT INTO oauth_tokens (hash, grant_id, kind, expires_at) VALUES (?1, ?2, 'access', ?3)",
        params![hash(&access), grant_id, now.saturating_add(access_ttl_ms)],
    )?;
    tx.execute(
        "INSERT INTO oauth_tokens (hash, grant_id, kind, expires_at) VALUES (?1, ?2, 'refresh', ?3)",
        params![hash(&refresh), grant_id, now + REFRESH_TTL_MS],
    )?;
    Ok((access, refresh))
}

/// Revokes a grant and everything it issued, codes included.
pub(super) fn revoke_grant(conn: &Connection, grant_id: &str, now: i64) -> rusqlite::Result<usize> {
    let changed = conn.execute(
        "UPDATE oauth_grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![grant_id, now],
    )?;
    conn.execute(
        "UPDATE oauth_tokens SET revoked_at = ?2 WHERE grant_id = ?1 AND revoked_at IS NULL",
        params![grant_id, now],
    )?;
    conn.execute(
        "UPDATE oauth_codes SET used_at = coalesce(used_at, ?2) WHERE grant_id = ?1",
        params![grant_id, now],
    )?;
    Ok(changed)
}

pub(super) fn load_grant(conn: &Connection, grant_id: &str) -> rusqlite::Result<Grant> {
    conn.query_row(
        "SELECT client_id, subject, scope, nonce, auth_time FROM oauth_grants WHERE id = ?1",
        params![grant_id],
        |r| {
            Ok(Grant {
                client_id: r.get(0)?,
                subject: r.get(1)?,
                scope: r.get(2)?,
                nonce: r.get(3)?,
                auth_time: r.get(4)?,
            })
        },
    )
}

pub(super) type Issued = Result<(Grant, String, String), OAuthError>;
/// grant_id, redirect_uri, code_challenge, expires_at, used_at, grant revoked_at.
type CodeRow = (String, String, String, i64, Option<i64>, Option<i64>);
/// grant_id, expires_at, used_at, revoked_at, grant revoked_at.
type RefreshRow = (String, i64, Option<i64>, Option<i64>, Option<i64>);

/// What every token issuance needs besides the request itself.
pub(super) struct Issuance {
    pub(super) now: i64,
    pub(super) access_ttl_ms: i64,
    pub(super) counters: Arc<Counters>,
}

pub(super) fn redeem_code(
    conn: &mut Connection,
    code: &str,
    client_id: &str,
    redirect_uri: Option<&str>,
    verifier: &str,
    issuance: &Issuance,
) -> rusqlite::Result<Issued> {
    let Issuance {
        now,
        access_ttl_ms,
        ref counters,
    } = *issuance;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<CodeRow> = tx
        .query_row(
            "SELECT c.grant_id, c.redirect_uri, c.code_challenge, c.expires_at, c.used_at, g.revoked_at
             FROM oauth_codes c JOIN oauth_grants g ON g.id = c.grant_id WHERE c.hash = ?1",
            params![hash(code)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
    let Some((grant_id, bound_redirect, challenge, expires_at, used_at, grant_revoked)) = row
    else {
        return Ok(Err(OAuthError::grant("unknown authorization code")));
    };
    if used_at.is_some() {
        // RFC 6749 §4.1.2: a code used twice revokes what it issued, since one of the two
        // presenters stole it.
        let revoked = revoke_grant(&tx, &grant_id, now)?;
        tx.commit()?;
        if revoked > 0 {
            bump(&counters.reuse_detections);
            tracing::warn!("authorization code reused; grant {grant_id} revoked");
        }
        return Ok(Err(OAuthError::grant(
            "authorization code already used; its grant is revoked",
        )));
    }
    // Single use from the first attempt on, whatever its outcome.
    tx.execute(
        "UPDATE oauth_codes SET used_at = ?2 WHERE hash = ?1",
        params![hash(code), now],
    )?;
    let grant = load_grant(&tx, &grant_id)?;
    let failure = if grant_revoked.is_some() {
        Some("the grant was revoked")
    } else if expires_at <= now {
        Some("authorization code expired")
    } else if grant.client_id != client_id {
        Some("authorization code was issued to another client")
    } else if redirect_uri != Some(bound_redirect.as_str()) {
        Some("redirect_uri does not match the authorization request")
    } else if !same(&s256(verifier), &challenge) {
        Some("PKCE verification failed: code_verifier does not match code_challenge")
    } else {
        None
    };
    if let Some(why) = failure {
        tx.commit()?;
        return Ok(Err(OAuthError::grant(why)));
    }
    let (access, refresh) = insert_tokens(&tx, &grant_id, now, access_ttl_ms)?;
    tx.commit()?;
    bump(&counters.codes_redeemed);
    Ok(Ok((grant, access, refresh)))
}

pub(super) fn rotate_refresh(
    conn: &mut Connection,
    refresh: &str,
    client_id: &str,
    scope: Option<&str>,
    issuance: &Issuance,
) -> rusqlite::Result<Issued> {
    let Issuance {
        now,
        access_ttl_ms,
        ref counters,
    } = *issuance;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<RefreshRow> = tx
        .query_row(
            "SELECT t.grant_id, t.expires_at, t.used_at, t.revoked_at, g.revoked_at
             FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id
             WHERE t.hash = ?1 AND t.kind = 'refresh'",
            params![hash(refresh)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((grant_id, expires_at, used_at, token_revoked, grant_revoked)) = row else {
        return Ok(Err(OAuthError::grant("unknown refresh token")));
    };
    let grant = load_grant(&tx, &grant_id)?;
    if grant.client_id != client_id {
        return Ok(Err(OAuthError::grant(
            "refresh token was issued to another client",
        )));
    }
    if grant_revoked.is_some() || token_revoked.is_some() {
        return Ok(Err(OAuthError::grant("refresh token revoked")));
    }
    if used_at.is_some() {
        // RFC 9700 §4.14.2: a rotated refresh token presented again means two parties hold the
        // grant; revoke all of it so the thief's copy dies too.
        revoke_grant(&tx, &grant_id, now)?;
        tx.commit()?;
        bump(&counters.reuse_detections);
        tracing::warn!("rotated refresh token reused; grant {grant_id} revoked");
        return Ok(Err(OAuthError::grant(
            "refresh token already used; its grant is revoked",
        )));
    }
    if expires_at <= now {
        return Ok(Err(OAuthError::grant("refresh token expired")));
    }
    if let Some(scope) = scope {
        let granted: Vec<&str> = grant.scope.split(' ').collect();
        if let Some(extra) = scope.split(' ').find(|s| !granted.contains(s)) {
            return Ok(Err(OAuthError::new(
                "invalid_scope",
                format!("scope {extra:?} was not granted"),
            )));
        }
    }
    tx.execute(
        "UPDATE oauth_tokens SET used_at = ?2 WHERE hash = ?1",
        params![hash(refresh), now],
    )?;
    let (access, new_refresh) = insert_tokens(&tx, &grant_id, now, access_ttl_ms)?;
    tx.commit()?;
    bump(&counters.refreshes_served);
    Ok(Ok((grant, access, new_refresh)))
}
