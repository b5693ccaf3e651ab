//! Asking the provider about an authorization request before the browser is sent there.
//!
//! A provider that refuses the request itself — an unknown `client_id`, a redirect URI not
//! registered for the client — shows its error page in the browser and never redirects back
//! (RFC 6749 §4.1.2.1: it must not, the redirect URI being untrusted). The CLI then learns
//! nothing and waits out `auth.login_timeout` (300 s) while the user stares at "unknown
//! client_id" (issue 10). So the login first GETs the authorization URL itself, without
//! following redirects, and reads the first answer:
//!
//! * **400** is the provider's error page (oidc-provider, samay-dev-server, Keycloak, Okta all
//!   answer a bad request so); another 4xx only when its page names an OAuth error code, since
//!   a 403 or 429 may come from a proxy in front of a provider that works in a browser;
//! * **a redirect to our redirect URI carrying `error=`** is a refusal the provider is allowed
//!   to send back (an unsupported scope, a missing PKCE challenge);
//! * anything else — a login page (200), a redirect to the provider's own login or consent
//!   pages (oidc-provider's 303 to `/interaction/…`), a server error, no answer — lets the login
//!   go on as before: the check only ever *shortens* a login that would fail anyway.
//!
//! The request is the real one (same state and PKCE challenge). It has no cookies, so it cannot
//! ride on a session the user has at the provider; a provider that approves it anyway (an
//! auto-approving development provider) redirects with a code we never deliver, which expires
//! unused — useless without the PKCE verifier only this process holds.

use std::time::Duration;

use url::Url;

use super::callback::{printable, same_endpoint};

/// How long the check may take. A provider that is slow to answer is not refusing anything:
/// the login goes on and the browser gets its turn.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this much of the error page is read: the error is in its first few hundred bytes.
const MAX_PAGE_BYTES: usize = 64 * 1024;

/// Error codes of RFC 6749 §4.1.2.1 and §5.2 and OpenID Connect that a refusal page names.
const OAUTH_ERRORS: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "invalid_redirect_uri",
    "invalid_request_uri",
    "invalid_request",
    "invalid_scope",
    "unsupported_response_type",
    "access_denied",
    "server_error",
];

/// The provider's refusal of the authorization request, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the identity provider refused the sign-in request before anyone signed in ({detail}): {hint}"
)]
pub struct Refusal {
    /// What the provider said: its error code and description, or the text of its page.
    pub detail: String,
    /// The setting to check.
    pub hint: String,
}

/// Checks the authorization request `url` (see the module docs). `redirect_uri` is where the
/// provider would send the browser back; `client_id` is named in the hint.
pub async fn check(
    http: &super::provider::ProviderHttp,
    url: &Url,
    redirect_uri: &Url,
    client_id: &str,
) -> Result<(), Refusal> {
    let response = match tokio::time::timeout(CHECK_TIMEOUT, http.reqwest().get(url.clone()).send())
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::debug!("checking the authorization request failed ({e}); opening it anyway");
            return Ok(());
        }
        Err(_) => {
            tracing::debug!("the authorization request was not answered within {CHECK_TIMEOUT:?}; opening it anyway");
            return Ok(());
        }
    };
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok());
        return match location {
            Some(back) if same_endpoint(&back, redirect_uri) => {
                refusal_in_redirect(&back, client_id)
            }
            _ => Ok(()),
        };
    }
    if !status.is_client_error() {
        return Ok(());
    }
    let page = read_capped(response).await;
    let text = page_text(&page);
    let code = OAUTH_ERRORS.iter().find(|c| text.contains(*c)).copied();
    if status.as_u16() != 400 && code.is_none() {
        tracing::debug!(%status, "the authorization request was answered {status}; opening it anyway");
        return Ok(());
    }
    let detail = match code {
        Some(code) => match description(&text) {
            Some(d) => format!("HTTP {}: {code}: {d}", status.as_u16()),
            None => format!("HTTP {}: {code}", status.as_u16()),
        },
        None => format!("HTTP {}: {}", status.as_u16(), printable(&text, 160)),
    };
    Err(Refusal {
        hint: hint(code, &text, client_id),
        detail,
    })
}

/// A redirect back to us: a refusal when it carries `error=` (a code means the provider
/// approved, which is not ours to judge here).
fn refusal_in_redirect(back: &Url, client_id: &str) -> Result<(), Refusal> {
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let Some(error) = param("error") else {
        return Ok(());
    };
    let error = printable(&error, 60);
    let detail = match param("error_description") {
        Some(d) => format!("{error}: {}", printable(&d, 200)),
        None => error.clone(),
    };
    let known = OAUTH_ERRORS.iter().find(|c| **c == error).copied();
    Err(Refusal {
        hint: hint(known, &detail, client_id),
        detail,
    })
}

/// What to check for a refusal, from its error code, else from what its text mentions.
fn hint(code: Option<&str>, text: &str, client_id: &str) -> String {
    let text = text.to_ascii_lowercase();
    let client = || {
        format!(
            "check auth.client_id ({client_id:?}): it must be a client registered at this \
             provider, as a public native client (see docs/login.md)"
        )
    };
    let redirect = || {
        "register the redirect URI http://127.0.0.1/callback (any port) for this client at the \
         provider, or correct auth.redirect_uri"
            .to_string()
    };
    match code {
        Some("invalid_client" | "unauthorized_client") => client(),
        Some("invalid_redirect_uri") => redirect(),
        Some("invalid_scope") => "check auth.scopes: the provider does not allow one of them for this client".into(),
        _ if text.contains("client") => client(),
        _ if text.contains("redirect") => redirect(),
        _ => "check the [auth] settings (client_id, scopes, redirect_uri) against the provider's registration of this client".into(),
    }
}

async fn read_capped(mut response: reqwest::Response) -> String {
    let mut page = Vec::new();
    while page.len() < MAX_PAGE_BYTES {
        match tokio::time::timeout(CHECK_TIMEOUT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => page.extend_from_slice(&chunk),
            _ => break,
        }
    }
    page.truncate(MAX_PAGE_BYTES);
    String::from_utf8_lossy(&page).into_owned()
}

/// The words of an HTML (or plain) error page: no head, styles, scripts or tags, entities
/// decoded, whitespace collapsed.
fn page_text(page: &str) -> String {
    let mut text = String::with_capacity(page.len().min(4096));
    let lower = page.to_ascii_lowercase();
    let mut i = 0;
    while i < page.len() {
        let rest = &lower[i..];
        if let Some(element) = ["<head", "<style", "<script"]
            .iter()
            .find(|e| rest.starts_with(**e))
        {
            let close = format!("</{}>", &element[1..]);
            i = match rest.find(&close) {
                Some(end) => i + end + close.len(),
                None => page.len(),
            };
            text.push(' ');
        } else if rest.starts_with('<') {
            i = match rest.find('>') {
                Some(end) => i + end + 1,
                None => page.len(),
            };
            text.push(' ');
        } else {
            let end = rest.find('<').map_or(page.len(), |n| i + n);
            text.push_str(page.get(i..end).unwrap_or(""));
            i = end;
        }
    }
    let text = text
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    // A label and its colon in separate elements (`<strong>error</strong>: x`) read as one.
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" :", ":")
}

/// The `error_description` an error page shows, up to the next labelled field.
fn description(text: &str) -> Option<String> {
    let start = text.find("error_description")? + "error_description".len();
    let rest = text[start..].trim_start_matches([':', '=', ' ']);
    let end = [" state:", " iss:", " error:", " error_uri:"]
        .iter()
        .filter_map(|label| rest.find(label))
        .min()
        .unwrap_or(rest.len());
    let d = rest[..end].trim();
    (!d.is_empty()).then(|| printable(d, 200))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oidc-provider 9's error page, as it answers an unknown client.
    const OIDC_PROVIDER_PAGE: &str = r#"<!DOCTYPE html>
    <html><head><meta charset="utf-8"><title>oops! something went wrong</title>
      <style>@import url(https://fonts.googleapis.com/css?family=Roboto:400,100);h1{font-weight:100}</style>
    </head><body><div class="container"><h1>oops! something went wrong</h1>
        <pre><strong>error</strong>: invalid_client</pre><pre><strong>error_description</strong>: client is invalid</pre><pre><strong>state</strong>: Zm9v</pre><pre><strong>iss</strong>: http://127.0.0.1:1</pre>
    </div></body></html>"#;

    #[test]
    fn reads_the_error_and_description_of_an_error_page_and_nothing_else() {
        let text = page_text(OIDC_PROVIDER_PAGE);
        assert!(!text.contains("Roboto"), "styles are not text: {text}");
        assert!(!text.contains('<'), "{text}");
        assert_eq!(description(&text).as_deref(), Some("client is invalid"));
        assert!(OAUTH_ERRORS.iter().any(|c| text.contains(c)));
        let dev = page_text(
            "<!doctype html><html><head><title>Sign-in error</title></head><body><h1>Sign-in error</h1><p>unknown client_id &quot;x&quot;</p></body></html>",
        );
        assert_eq!(dev, "Sign-in error unknown client_id \"x\"");
        assert_eq!(description(&dev), None);
    }

    #[test]
    fn hints_name_the_setting_to_fix() {
        assert!(hint(Some("invalid_client"), "", "abc").contains("auth.client_id (\"abc\")"));
        assert!(hint(None, "unknown client_id \"x\"", "x").contains("auth.client_id"));
        assert!(hint(Some("invalid_redirect_uri"), "", "x").contains("redirect"));
        assert!(hint(Some("invalid_scope"), "", "x").contains("auth.scopes"));
        assert!(hint(None, "something odd", "x").contains("[auth]"));
    }

    #[test]
    fn a_redirect_back_is_a_refusal_only_with_an_error() {
        let back = Url::parse(
            "http://127.0.0.1:5/callback?error=invalid_scope&error_description=no%1b[2J&state=s",
        )
        .unwrap();
        let refusal = refusal_in_redirect(&back, "c").expect_err("an error");
        assert_eq!(
            refusal.detail, "invalid_scope: no\\u{1b}[2J",
            "escape sequences are shown, never sent raw"
        );
        assert!(refusal.hint.contains("auth.scopes"));
        let approved = Url::parse("http://127.0.0.1:5/callback?code=x&state=s").unwrap();
        assert_eq!(refusal_in_redirect(&approved, "c"), Ok(()));
    }

    #[test]
    fn page_text_survives_broken_markup() {
        for page in ["<", "<head", "<style>x", "a <b", "é<p>ü</p>", "&amp;&lt;"] {
            let _ = page_text(page);
        }
        assert_eq!(page_text("é<p>ü</p>"), "é ü");
    }
}
