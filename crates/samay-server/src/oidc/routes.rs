//! The provider's HTTP endpoints: discovery, the authorization endpoint and its sign-in page,
//! the token endpoint, userinfo, revocation, and the counters tests read.

use super::*;

pub(crate) fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/oauth/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/token", axum::routing::post(token))
        .route("/oauth/userinfo", get(userinfo).post(userinfo))
        .route("/oauth/revoke", axum::routing::post(revoke))
        .route("/v1/_oauth", get(counters))
        .with_state(provider)
}

async fn discovery(State(p): State<Arc<Provider>>) -> Response {
    let base = &p.issuer;
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SUPPORTED_SCOPES,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "preferred_username", "name", "email"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["HS256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

async fn counters(State(p): State<Arc<Provider>>) -> Response {
    match p.counters().await {
        Ok(c) => Json(c).into_response(),
        Err(e) => internal(e),
    }
}

/// An authorization error shown to the user, never redirected.
fn error_page(message: &str) -> Response {
    let mut response = (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html>
<html><head><meta charset=\"utf-8\"><title>Sign-in error</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:40em}}</style></head>
<body><h1>Sign-in error</h1><p>{}</p><p>The application asked for something this server does not allow, so you are not sent back to it.</p></body></html>
",
            escape(message)
        )),
    )
        .into_response();
    no_store(&mut response);
    response
}

/// The sign-in form. The authorization request travels in hidden fields and is validated again
/// when the form comes back, so editing them gains nothing.
fn sign_in_page(req: &AuthzRequest, problem: Option<&str>) -> Response {
    let mut hidden = String::new();
    let fields = [
        ("response_type", Some("code")),
        ("client_id", Some(req.client_id.as_str())),
        ("redirect_uri", Some(req.redirect_uri.as_str())),
        ("code_challenge", Some(req.code_challenge.as_str())),
        ("code_challenge_method", Some("S256")),
        ("scope", Some(req.scope.as_str())),
        ("state", req.state.as_deref()),
        ("nonce", req.nonce.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape(value)
            ));
        }
    }
    let problem = problem
        .map(|p| format!("<p class=\"problem\">{}</p>", escape(p)))
        .unwrap_or_default();
    let status = if problem.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut response = (
        status,
        Html(format!(
            "<!doctype html>
<html><head><meta charset=\"utf-8\"><title>Sign in to samay-dev-server</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:30em}}label{{display:block;margin:.6em 0}}.problem{{color:#a00}}</style></head>
<body><h1>Sign in</h1>
<p><b>{client}</b> asks to sync your ActivityWatch data (scope: {scope}). Development server: any non-empty password is accepted and the username becomes your user id.</p>
{problem}
<form method=\"post\" action=\"/oauth/authorize\">
{hidden}<label>Username <input name=\"username\" value=\"{user}\" autofocus></label>
<label>Password <input name=\"password\" type=\"password\"></label>
<button name=\"action\" value=\"approve\" type=\"submit\">Sign in</button>
<button name=\"action\" value=\"deny\" type=\"submit\">Deny</button>
</form></body></html>
",
            client = escape(&req.client_id),
            scope = escape(&req.scope),
            user = escape(req.login_hint.as_deref().unwrap_or("")),
        )),
    )
        .into_response();
    no_store(&mut response);
    // The page must not be framed by another site (clickjacking the approve button).
    response.headers_mut().insert(
        header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

/// 303 to the client's (validated) redirect URI with `extra`, `state` and `iss` (RFC 9207).
fn redirect_back(p: &Provider, req: &AuthzRequest, extra: &[(&str, &str)]) -> Response {
    let Ok(mut url) = Url::parse(&req.redirect_uri) else {
        return error_page("redirect_uri is not a URL");
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in extra {
            query.append_pair(k, v);
        }
        if let Some(state) = &req.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &p.issuer);
    }
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return error_page("redirect_uri cannot be sent as a header");
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    no_store(&mut response);
    response
}

async fn approve(p: &Provider, req: &AuthzRequest, subject: String) -> Response {
    match p.issue_code(req, subject).await {
        Ok(code) => redirect_back(p, req, &[("code", &code)]),
        Err(e) => internal(e),
    }
}

async fn authorize_get(State(p): State<Arc<Provider>>, RawQuery(query): RawQuery) -> Response {
    let params = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(e) => return error_page(&e),
    };
    let req = match validate_authorize(&params) {
        Ok(req) => req,
        Err(e) => return error_page(&e),
    };
    if let Some(configured) = p.auto_approve() {
        let subject = req
            .login_hint
            .as_deref()
            .and_then(valid_subject)
            .or_else(|| valid_subject(&configured));
        if let Some(subject) = subject {
            return approve(&p, &req, subject).await;
        }
    }
    if req.prompt.as_deref() == Some("none") {
        return redirect_back(&p, &req, &[("error", "login_required")]);
    }
    sign_in_page(&req, None)
}

async fn authorize_post(State(p): State<Arc<Provider>>, body: Bytes) -> Response {
    let params = match Params::parse(&body) {
        Ok(params) => params,
        Err(e) => return error_page(&e),
    };
    let req = match validate_authorize(&params) {
        Ok(req) => req,
        Err(e) => return error_page(&e),
    };
    if params.get("action") == Some("deny") {
        return redirect_back(
            &p,
            &req,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied the request"),
            ],
        );
    }
    let Some(subject) = params.get("username").and_then(valid_subject) else {
        return sign_in_page(&req, Some("Enter a username."));
    };
    if params.get("password").is_none() {
        let req = AuthzRequest {
            login_hint: Some(subject),
            ..req
        };
        return sign_in_page(&req, Some("Enter a password (any non-empty one will do)."));
    }
    approve(&p, &req, subject).await
}

/// The client of a token or revocation request: `client_id` in the body, or the user name of
/// HTTP Basic credentials (RFC 6749 §2.3.1), which must agree when both are given.
fn client_of(headers: &HeaderMap, params: &Params) -> Result<String, OAuthError> {
    let from_basic = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => {
            let (scheme, creds) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(OAuthError::new(
                    "invalid_client",
                    "unsupported client authentication",
                ));
            }
            let decoded = STANDARD
                .decode(creds.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::new("invalid_client", "malformed Basic credentials"))?;
            let id = decoded.split(':').next().unwrap_or("");
            Some(
                url::form_urlencoded::parse(format!("x={id}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default(),
            )
        }
        None => None,
    };
    let client_id = match (from_basic, params.get("client_id")) {
        (Some(a), Some(b)) if a != b => {
            return Err(OAuthError::new(
                "invalid_request",
                "client_id differs from the Basic credentials",
            ))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b.to_string(),
        (None, None) => return Err(OAuthError::new("invalid_client", "client_id is missing")),
    };
    if client_id != DEV_CLIENT_ID {
        return Err(OAuthError::new("invalid_client", "unknown client"));
    }
    Ok(client_id)
}

async fn token(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match Params::parse(&body) {
        Ok(params) => params,
        Err(e) => return OAuthError::new("invalid_request", e).into_response(),
    };
    let client_id = match client_of(&headers, &params) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let issuance = Issuance {
        now: p.clock.now_ms(),
        access_ttl_ms: p.access_ttl_ms,
        counters: p.counters.clone(),
    };
    let outcome = match params.get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = params.get("code").map(str::to_owned) else {
                return OAuthError::new("invalid_request", "code is missing").into_response();
            };
            let Some(verifier) = params.get("code_verifier").map(str::to_owned) else {
                return OAuthError::new("invalid_request", "code_verifier is missing (PKCE)")
                    .into_response();
            };
            if !valid_verifier(&verifier) {
                return OAuthError::new("invalid_request", "malformed code_verifier")
                    .into_response();
            }
            let redirect_uri = params.get("redirect_uri").map(str::to_owned);
            p.db(move |conn| {
                redeem_code(
                    conn,
                    &code,
                    &client_id,
                    redirect_uri.as_deref(),
                    &verifier,
                    &issuance,
                )
            })
            .await
        }
        Some("refresh_token") => {
            let Some(refresh) = params.get("refresh_token").map(str::to_owned) else {
                return OAuthError::new("invalid_request", "refresh_token is missing")
                    .into_response();
            };
            let scope = params.get("scope").map(str::to_owned);
            p.db(move |conn| {
                rotate_refresh(conn, &refresh, &client_id, scope.as_deref(), &issuance)
            })
            .await
        }
        Some(other) => {
            return OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported"),
            )
            .into_response()
        }
        None => return OAuthError::new("invalid_request", "grant_type is missing").into_response(),
    };
    match outcome {
        Ok(Ok((grant, access, refresh))) => p.token_response(&grant, access, refresh),
        Ok(Err(e)) => e.into_response(),
        Err(e) => internal(e),
    }
}

fn invalid_token(description: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_token", "error_description": description})),
    )
        .into_response();
    // RFC 6750 §3: without any token the challenge names no error.
    let challenge = if description.is_empty() {
        HeaderValue::from_static("Bearer realm=\"samay-dev-server\"")
    } else {
        HeaderValue::from_static(
            "Bearer realm=\"samay-dev-server\", error=\"invalid_token\", error_description=\"unknown, expired or revoked access token\"",
        )
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    response
}

async fn userinfo(State(p): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return invalid_token("");
    };
    match p.access_subject(token).await {
        Ok(Some(sub)) => {
            let mut response = Json(json!({
                "sub": sub,
                "preferred_username": sub,
                "name": sub,
                "email": email_of(&sub),
            }))
            .into_response();
            no_store(&mut response);
            response
        }
        Ok(None) => invalid_token("unknown, expired or revoked access token"),
        Err(e) => internal(e),
    }
}

/// RFC 7009. Revoking a refresh token revokes its whole grant; an access token only itself.
/// Unknown tokens, and tokens of another client, are answered 200 as the RFC asks, so the
/// endpoint tells nobody which tokens exist.
async fn revoke(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match Params::parse(&body) {
        Ok(params) => params,
        Err(e) => return OAuthError::new("invalid_request", e).into_response(),
    };
    let client_id = match client_of(&headers, &params) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let Some(token) = params.get("token") else {
        return OAuthError::new("invalid_request", "token is missing").into_response();
    };
    let token_hash = hash(token);
    let now = p.clock.now_ms();
    let revoked = p
        .db(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT t.grant_id, t.kind, g.client_id FROM oauth_tokens t
                     JOIN oauth_grants g ON g.id = t.grant_id WHERE t.hash = ?1",
                    params![token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let changed = match row {
                Some((_, _, owner)) if owner != client_id => 0,
                Some((grant_id, kind, _)) if kind == "refresh" => {
                    revoke_grant(&tx, &grant_id, now)?
                }
                Some(_) => tx.execute(
                    "UPDATE oauth_tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
                    params![token_hash, now],
                )?,
                None => 0,
            };
            tx.commit()?;
            Ok(changed > 0)
        })
        .await;
    match revoked {
        Ok(revoked) => {
            if revoked {
                bump(&p.counters.revocations);
            }
            let mut response = StatusCode::OK.into_response();
            no_store(&mut response);
            response
        }
        Err(e) => internal(e),
    }
}
