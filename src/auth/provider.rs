//! The identity provider: where its endpoints are (configured, or from its OpenID discovery
//! document), which of them may be used, and the HTTP client that talks to them.
//!
//! Two rules hold for everything here, before any request is made and for every answer:
//!
//! * every endpoint — configured or discovered — passes [`crate::endpoint::secure_url`]
//!   (https, or http to this machine): the code, the PKCE verifier and the tokens travel there;
//! * every answer's body is read with a ceiling ([`MAX_ANSWER_BYTES`]), including the token
//!   endpoint's, which the `oauth2` crate reads through [`ProviderHttp`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use super::oauth::LoginError;
use super::tokens::Account;
use super::AuthError;
use crate::config::AuthConfig;
use crate::endpoint::{secure_url, EndpointError};
use crate::http_body::{read_capped, BodyError};

/// The most of any answer of the provider that is read. A discovery document is a few KiB, a
/// token answer with an ID token about as much; a megabyte is plenty and bounds what a broken
/// or hostile provider can make us allocate.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The provider's endpoints, from the config or from OpenID discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The issuer identifier; `None` for a plain OAuth 2 server configured by endpoints only.
    pub issuer: Option<String>,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub userinfo_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    /// RFC 8628 device authorization endpoint: `--login --device`, and the login without a
    /// browser.
    pub device_authorization_endpoint: Option<Url>,
    /// RFC 9207: the provider promises an `iss` on every authorization response.
    pub iss_parameter_supported: bool,
}

impl Provider {
    /// Which stored entry the tokens of this provider and client live in.
    pub fn account(&self, client_id: &str) -> Account {
        Account {
            issuer: self
                .issuer
                .clone()
                .unwrap_or_else(|| self.token_endpoint.to_string()),
            client_id: client_id.to_string(),
        }
    }

    /// Every endpoint against the https rule. [`resolve_provider`] has checked what it
    /// returns; this is for a `Provider` built by hand (`--dev`, tests), checked again by the
    /// login and the refresh before their first request.
    pub fn check_endpoints(&self) -> Result<(), EndpointError> {
        let named = [
            ("authorization_endpoint", Some(&self.authorization_endpoint)),
            ("token_endpoint", Some(&self.token_endpoint)),
            ("userinfo_endpoint", self.userinfo_endpoint.as_ref()),
            ("revocation_endpoint", self.revocation_endpoint.as_ref()),
            (
                "device_authorization_endpoint",
                self.device_authorization_endpoint.as_ref(),
            ),
        ];
        for (key, url) in named {
            if let Some(url) = url {
                secure_url(key, url.as_str())?;
            }
        }
        if let Some(issuer) = &self.issuer {
            secure_url("issuer", issuer)?;
        }
        Ok(())
    }
}

/// The HTTP client for the provider: never follows redirects (RFC 9700: a redirect from the
/// token endpoint would carry the code or refresh token elsewhere), bounded in time, and —
/// as the `oauth2` crate's client ([`oauth2::AsyncHttpClient`]) — reading every answer with a
/// ceiling, which the crate's own reqwest client does not.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
}

/// Builds the provider's HTTP client.
pub fn http_client() -> Result<ProviderHttp, AuthError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AuthError::Transient(format!("cannot build an HTTP client: {e}")))?;
    Ok(ProviderHttp { client })
}

/// Why a request to the provider got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProviderHttpError {
    #[error("{}", crate::printable::printable(&.0.to_string()))]
    Request(reqwest::Error),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("cannot build the request: {0}")]
    Build(String),
}

impl From<reqwest::Error> for ProviderHttpError {
    fn from(e: reqwest::Error) -> Self {
        ProviderHttpError::Request(e)
    }
}

impl ProviderHttp {
    /// The underlying client, for requests built by hand (discovery, userinfo, revocation).
    pub(crate) fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends, and reads the answer's status and body (at most [`MAX_ANSWER_BYTES`]).
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), ProviderHttpError> {
        let response = request.send().await?;
        let status = response.status();
        Ok((status, read_capped(response, MAX_ANSWER_BYTES).await?))
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.client.execute(request).await?;
            let mut answer = oauth2::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let body = read_capped(response, MAX_ANSWER_BYTES).await?;
            answer
                .body(body)
                .map_err(|e| ProviderHttpError::Build(e.to_string()))
        })
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// Endpoints from the config, filling what is missing from the issuer's discovery document.
/// Every endpoint, configured or discovered, must pass the https rule; the error names the
/// config key or the discovery field.
pub async fn resolve_provider(
    cfg: &AuthConfig,
    http: &ProviderHttp,
) -> Result<Provider, LoginError> {
    let configured = |key: &str, v: &str| -> Result<Option<Url>, LoginError> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(secure_url(&format!("auth.{key}"), v)?))
    };
    let auth = configured("auth_url", &cfg.auth_url)?;
    let token = configured("token_url", &cfg.token_url)?;
    let userinfo = configured("userinfo_url", &cfg.userinfo_url)?;
    let revocation = configured("revocation_url", &cfg.revocation_url)?;
    let device = configured("device_authorization_url", &cfg.device_authorization_url)?;
    let issuer = cfg.issuer.trim().trim_end_matches('/').to_string();
    if let (Some(a), Some(t)) = (&auth, &token) {
        let all_set = userinfo.is_some() && revocation.is_some() && device.is_some();
        if issuer.is_empty() || all_set {
            if !issuer.is_empty() {
                secure_url("auth.issuer", &issuer)?;
            }
            return Ok(Provider {
                issuer: (!issuer.is_empty()).then_some(issuer),
                authorization_endpoint: a.clone(),
                token_endpoint: t.clone(),
                userinfo_endpoint: userinfo,
                revocation_endpoint: revocation,
                device_authorization_endpoint: device,
                iss_parameter_supported: false,
            });
        }
    }
    if issuer.is_empty() {
        return Err(LoginError::NotConfigured(
            "set auth.issuer (OpenID discovery), or auth.auth_url and auth.token_url".into(),
        ));
    }
    secure_url("auth.issuer", &issuer)?;
    let url = format!("{issuer}/.well-known/openid-configuration");
    let d: Discovery =
        get_json(http, &url, None)
            .await
            .map_err(|detail| LoginError::Discovery {
                url: url.clone(),
                detail,
            })?;
    let fail = |detail: String| LoginError::Discovery {
        url: url.clone(),
        detail,
    };
    // OpenID Connect Discovery §4.3: the document must be for the issuer we asked.
    if d.issuer.trim_end_matches('/') != issuer {
        return Err(fail(format!(
            "the document is for issuer {} instead of {issuer}",
            crate::printable::printable(&d.issuer)
        )));
    }
    let discovered = |field: &str, v: &str| secure_url(&format!("{field} (from {url})"), v);
    let discovered_opt =
        |field: &str, v: Option<&String>| v.map(|v| discovered(field, v)).transpose();
    Ok(Provider {
        authorization_endpoint: match auth {
            Some(a) => a,
            None => discovered("authorization_endpoint", &d.authorization_endpoint)?,
        },
        token_endpoint: match token {
            Some(t) => t,
            None => discovered("token_endpoint", &d.token_endpoint)?,
        },
        userinfo_endpoint: match userinfo {
            Some(u) => Some(u),
            None => discovered_opt("userinfo_endpoint", d.userinfo_endpoint.as_ref())?,
        },
        revocation_endpoint: match revocation {
            Some(r) => Some(r),
            None => discovered_opt("revocation_endpoint", d.revocation_endpoint.as_ref())?,
        },
        device_authorization_endpoint: match device {
            Some(d) => Some(d),
            None => discovered_opt(
                "device_authorization_endpoint",
                d.device_authorization_endpoint.as_ref(),
            )?,
        },
        issuer: Some(d.issuer),
        iss_parameter_supported: d.authorization_response_iss_parameter_supported,
    })
}

/// `GET url` (with a bearer token when given), a 2xx answer of at most [`MAX_ANSWER_BYTES`]
/// parsed as `T`. `Err` says why, printable.
pub(crate) async fn get_json<T: DeserializeOwned>(
    http: &ProviderHttp,
    url: &str,
    bearer: Option<&str>,
) -> Result<T, String> {
    let mut request = http.reqwest().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let (status, body) = http.send(request).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_slice(&body)
        .map_err(|e| crate::printable::printable(&e.to_string()).into_owned())
}
