//! Discovery, the code flow (auto-approved and through the sign-in form), PKCE and redirect URI rules.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oauth2::TokenResponse;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, Scope};
use reqwest::StatusCode;
use samay_server::{OidcConfig, DEV_CLIENT_ID};
use serde_json::{json, Value};

use super::support::*;

#[tokio::test]
async fn discovery_names_the_endpoints_pkce_s256_and_no_client_auth() {
    let rig = start(OidcConfig::default()).await;
    let base = rig.server.base_url();
    let doc: Value = http()
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], base.as_str());
    assert_eq!(rig.server.issuer(), base);
    for (key, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("revocation_endpoint", "/oauth/revoke"),
    ] {
        assert_eq!(doc[key], format!("{base}{path}"), "{key}");
    }
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    for scope in ["openid", "profile", "email", "offline_access"] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(scope)),
            "{scope}"
        );
    }
}

#[tokio::test]
async fn auto_approved_code_flow_gives_tokens_that_ingest_and_userinfo_take_as_the_subject() {
    let rig = start_auto("dev-user").await;
    let client = client(&rig.server, REDIRECT);
    let (url, state, verifier) = authorize_url(&client, Some("alice"));
    let location = expect_redirect(url.as_str()).await;
    assert!(
        location.starts_with("http://127.0.0.1:53682/callback?"),
        "{location}"
    );
    let q = query(&location);
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()), "RFC 9207 iss");
    let tokens = client
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange");
    assert!(tokens.refresh_token().is_some());
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3600)));

    let (status, info) = userinfo(&rig.server, access(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        info["sub"], "alice",
        "login_hint names the auto-approved user"
    );
    assert_eq!(info["preferred_username"], "alice");
    assert!(info["email"].as_str().unwrap().starts_with("alice@"));

    assert_eq!(ingest(&rig.server, access(&tokens)).await, StatusCode::OK);
    let stored = rig.server.stored_events(None, None).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].user, "alice",
        "events are keyed by the token's subject"
    );

    // Without a login_hint the configured user signs in; static tokens still work beside.
    let tokens = login(&rig.server, None).await;
    assert_eq!(
        userinfo(&rig.server, access(&tokens)).await.1["sub"],
        "dev-user"
    );
    assert_eq!(ingest(&rig.server, STATIC_TOKEN).await, StatusCode::OK);
    assert_eq!(
        ingest(&rig.server, "made-up").await,
        StatusCode::UNAUTHORIZED
    );

    let counters = rig.server.oauth_counters().await.unwrap();
    assert_eq!((counters.codes_issued, counters.codes_redeemed), (2, 2));
    assert_eq!(counters.grants_active, 2);
}

#[tokio::test]
async fn sign_in_form_approves_or_denies_and_the_token_answer_has_an_hs256_id_token() {
    let rig = start(OidcConfig::default()).await;
    let client = client(&rig.server, REDIRECT);
    let (url, state, verifier) = authorize_url(&client, None);

    // The page is a form; nothing redirects before the user answers.
    let page = http().get(url.as_str()).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/oauth/authorize\""));
    assert!(html.contains("name=\"password\""));

    // Post what the page's hidden fields carry (the authorization request) plus the answer.
    let mut form: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let authorize = format!("{}/oauth/authorize", rig.server.base_url());

    let mut empty_password = form.clone();
    empty_password.push(("username".into(), "bob".into()));
    let again = http()
        .post(&authorize)
        .form(&empty_password)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "a password is required"
    );
    assert!(again.headers().get("location").is_none());

    let mut deny = form.clone();
    deny.push(("action".into(), "deny".into()));
    let denied = http().post(&authorize).form(&deny).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::SEE_OTHER);
    let q = query(denied.headers()["location"].to_str().unwrap());
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()));
    assert!(!q.contains_key("code"));

    form.extend([
        ("username".to_string(), "bob".to_string()),
        ("password".to_string(), "anything".to_string()),
        ("action".to_string(), "approve".to_string()),
    ]);
    let approved = http().post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(approved.status(), StatusCode::SEE_OTHER);
    let q = query(approved.headers()["location"].to_str().unwrap());
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()));

    // The raw token answer, as RFC 6749 §5.1 and OpenID Connect Core §3.1.3.3 shape it.
    let answer = http()
        .post(format!("{}/oauth/token", rig.server.base_url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", DEV_CLIENT_ID),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid profile offline_access");
    let parts: Vec<&str> = body["id_token"].as_str().unwrap().split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], rig.server.issuer());
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], DEV_CLIENT_ID);
    assert_eq!(claims["preferred_username"], "bob");
    assert!(claims["email"].is_string());
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    let token = body["access_token"].as_str().unwrap();
    assert_eq!(userinfo(&rig.server, token).await.1["sub"], "bob");
}

#[tokio::test]
async fn a_wrong_verifier_is_invalid_grant() {
    let rig = start_auto("alice").await;
    let client = client(&rig.server, REDIRECT);
    let (code, _right) = auto_code(&client, None).await;
    let (_, wrong) = PkceCodeChallenge::new_random_sha256();
    assert_invalid_grant(
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(wrong)
            .request_async(&http())
            .await,
    );
}

#[tokio::test]
async fn missing_or_plain_pkce_gets_an_error_page_and_no_redirect() {
    let rig = start_auto("alice").await;
    let client = client(&rig.server, REDIRECT);
    let (no_pkce, _) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .url();
    let page = expect_error_page(no_pkce.as_str()).await;
    assert!(page.contains("PKCE"), "{page}");

    // The oauth2 crate sends `plain` only with a feature: rewrite an S256 request instead. A
    // 43-character plain challenge is syntactically a valid S256 one, so only the method
    // tells them apart.
    let (url, _, verifier) = authorize_url(&client, None);
    let with_method = |method: Option<&str>| {
        let mut url = url.clone();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "code_challenge_method" && k != "code_challenge")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(pairs);
        query.append_pair("code_challenge", verifier.secret());
        if let Some(method) = method {
            query.append_pair("code_challenge_method", method);
        }
        drop(query);
        url
    };
    let page = expect_error_page(with_method(Some("plain")).as_str()).await;
    assert!(page.contains("S256"), "{page}");
    // A challenge without a method defaults to plain (RFC 7636 §4.3): refused too.
    expect_error_page(with_method(None).as_str()).await;
    assert_eq!(rig.server.oauth_counters().await.unwrap().codes_issued, 0);
}

#[tokio::test]
async fn unregistered_redirect_uris_and_clients_get_an_error_page_and_no_redirect() {
    let rig = start_auto("alice").await;
    for redirect in [
        "http://localhost:53682/callback",
        "http://example.org/callback",
        "https://example.org/callback",
        "http://192.168.1.2:8080/callback",
        "myapp://callback",
    ] {
        let (url, _, _) = authorize_url(&client(&rig.server, redirect), None);
        expect_error_page(url.as_str()).await;
    }
    let (url, _, _) = authorize_url(&client(&rig.server, REDIRECT), None);
    let other_client = url
        .as_str()
        .replace("client_id=aw-sync-samay", "client_id=someone-else");
    assert_ne!(other_client, url.as_str());
    expect_error_page(&other_client).await;
    assert_eq!(rig.server.oauth_counters().await.unwrap().codes_issued, 0);
}

#[tokio::test]
async fn any_loopback_port_and_private_use_schemes_are_accepted_but_the_uri_is_bound_to_the_code() {
    let rig = start_auto("alice").await;
    for redirect in [
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:40123/other/path",
        "samay://callback",
        "app.samay.example:/cb",
    ] {
        let client = client(&rig.server, redirect);
        let (code, verifier) = auto_code(&client, None).await;
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&http())
            .await
            .unwrap_or_else(|e| panic!("{redirect}: {e:?}"));
    }
    // The token request must name the redirect URI of the authorization request.
    let (code, verifier) = auto_code(&client(&rig.server, "http://127.0.0.1:1111/cb"), None).await;
    assert_invalid_grant(
        client(&rig.server, "http://127.0.0.1:2222/cb")
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&http())
            .await,
    );
}
