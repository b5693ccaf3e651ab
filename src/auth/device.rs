//! Signing in without a browser on this machine: the OAuth 2.0 device authorization grant
//! (RFC 8628), as `gh auth login` does over SSH.
//!
//! The program asks the provider's device authorization endpoint for a pair of codes, shows
//! the user a short *user code* and an address to open on any device (a phone, the laptop the
//! SSH session comes from), and polls the token endpoint with the secret *device code* until
//! the user approved there, refused, or the codes expired. The polling rules (§3.4, §3.5) are
//! the `oauth2` crate's loop, driven here with tokio's clock so they are tested under paused
//! time: wait `interval` seconds between requests (5 when the provider names none), 5 s more
//! for every `slow_down`, and stop at `expires_in`. On success the tokens are identified and
//! stored exactly as after the browser login.
//!
//! [`choose_method`] decides between this, the browser and paste-back: `--login --device`
//! asks for it; a plain `--login` takes it when no browser can be opened here (SSH, no
//! display: [`super::browser::reason_not_to_open`]) and the provider offers it; without it
//! paste-back (`--no-browser`) stays the fallback.

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::{
    AsyncHttpClient, DeviceAuthorizationUrl, DeviceCodeErrorResponseType, EndpointNotSet,
    EndpointSet, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
};

use super::browser::SkipReason;
use super::callback::printable;
use super::oauth::{self, LoginError, OidcClient, Provider, ProviderHttp, TokenResp};
use super::store::TokenStore;
use super::tokens::StoredTokens;
use crate::config::AuthConfig;

/// Polls never come closer together than this, whatever `interval` the provider names (0 would
/// make the loop spin).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait for an approval, whatever `expires_in` says (oidc-provider gives 10 min,
/// GitHub 15, Google 30): a broken or hostile answer must not keep the command alive for days.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// An `oauth2` client with the token and device authorization endpoints set.
pub type DeviceClient = OidcClient<EndpointNotSet, EndpointSet>;

/// Why the device sign-in did not give tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the identity provider offers no sign-in with a code (its discovery document names no device_authorization_endpoint, and auth.device_authorization_url is empty); log in with aw-sync-samay --login --no-browser instead")]
    NoEndpoint,
    /// The device authorization endpoint refused (an unknown `client_id`, a client not allowed
    /// the device grant, ...).
    #[error("the identity provider refused to start a sign-in with a code: {0}; check auth.client_id and that the client may use the device authorization grant")]
    Start(String),
    #[error("the sign-in was declined on the other device; run aw-sync-samay --login --device to try again")]
    Denied,
    #[error("the code expired before the sign-in was approved (it was valid for {} s); run aw-sync-samay --login --device for a new one", .0.as_secs())]
    Expired(Duration),
    #[error("the identity provider ended the sign-in with a code: {0}; run aw-sync-samay --login --device to try again")]
    Failed(String),
}

/// How `--login` signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// The browser on this machine, back through the loopback listener (or the deep link).
    Browser,
    /// The URL printed; the address the browser ended on pasted back (the loopback listener
    /// still works when the browser runs here).
    Paste,
    /// A code entered on another device (RFC 8628).
    Device,
}

/// Picks the sign-in for `--login`: `device` is `--device`, `no_browser` is `--no-browser`,
/// `no_browser_here` why no browser can be opened here (`None`: one can), `offers_device`
/// whether the provider has a device authorization endpoint.
pub fn choose_method(
    device: bool,
    no_browser: bool,
    no_browser_here: Option<SkipReason>,
    offers_device: bool,
) -> Result<LoginMethod, DeviceError> {
    Ok(match (device, no_browser, no_browser_here) {
        (true, _, _) if !offers_device => return Err(DeviceError::NoEndpoint),
        (true, _, _) => LoginMethod::Device,
        (false, true, _) => LoginMethod::Paste,
        (false, false, Some(_)) if offers_device => LoginMethod::Device,
        (false, false, Some(_)) => LoginMethod::Paste,
        (false, false, None) => LoginMethod::Browser,
    })
}

/// What the user is shown: where to go and which code to enter. Remote text, so made
/// printable (no terminal escapes from a hostile provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePrompt {
    pub verification_uri: String,
    /// The address with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// How long the code is valid (capped at [`MAX_WAIT`]).
    pub expires_in: Duration,
}

impl DevicePrompt {
    fn new(details: &StandardDeviceAuthorizationResponse) -> DevicePrompt {
        DevicePrompt {
            verification_uri: printable(details.verification_uri().url().as_str(), 500),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|u| printable(u.secret(), 600)),
            user_code: printable(details.user_code().secret(), 40),
            expires_in: details.expires_in().min(MAX_WAIT),
        }
    }
}

impl fmt::Display for DevicePrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "To sign in, open this address in a browser on any device:\n\n  {}\n",
            self.verification_uri
        )?;
        writeln!(f, "and enter the code  {}", self.user_code)?;
        if let Some(complete) = &self.verification_uri_complete {
            writeln!(f, "(or open {complete}, which fills the code in)")?;
        }
        let minutes = self.expires_in.as_secs().div_ceil(60);
        write!(
            f,
            "\nWaiting for the sign-in to be approved (the code is valid for {minutes} min; Ctrl+C to cancel)..."
        )
    }
}

/// `--login --device`: asks for the codes, hands them to `show` (which prints them), waits for
/// the approval, then identifies and stores the tokens as the browser login does.
pub async fn login(
    cfg: &AuthConfig,
    store: &TokenStore,
    provider: &Provider,
    http: &ProviderHttp,
    show: impl FnOnce(&DevicePrompt),
) -> Result<StoredTokens, LoginError> {
    if cfg.client_id.trim().is_empty() {
        return Err(LoginError::NotConfigured("set auth.client_id".into()));
    }
    let endpoint = provider
        .device_authorization_endpoint
        .clone()
        .ok_or(DeviceError::NoEndpoint)?;
    let client = oauth::client(provider, &cfg.client_id)
        .set_device_authorization_url(DeviceAuthorizationUrl::from_url(endpoint));
    let mut request = client
        .exchange_device_code()
        .add_scopes(cfg.scopes.iter().map(|s| Scope::new(s.clone())));
    if cfg.scopes.iter().any(|s| s == "offline_access") {
        // As in the browser login: offline_access (the refresh token) needs prompt=consent.
        request = request.add_extra_param("prompt", "consent");
    }
    if let Some(resource) = oauth::resource(cfg) {
        request = request.add_extra_param("resource", resource);
    }
    let details: StandardDeviceAuthorizationResponse = request
        .request_async(http)
        .await
        .map_err(|e| DeviceError::Start(oauth::describe_token_error(&e)))?;
    show(&DevicePrompt::new(&details));
    let resource = oauth::resource(cfg);
    let (response, requested_at) = poll(&client, http, &details, resource.as_deref()).await?;
    tracing::debug!("the device sign-in was approved");
    let mut tokens = oauth::from_response(
        &response,
        None,
        provider,
        &provider.account(&cfg.client_id),
        requested_at,
    );
    oauth::identify(&mut tokens, provider, http).await;
    store
        .save(&tokens)
        .await
        .map_err(|e| LoginError::Store(e.to_string()))?;
    Ok(tokens)
}

/// Polls the token endpoint for `details` until the user approved, refused, or the codes
/// expired (see the module docs). Returns the token response and the time of the request that
/// got it (for the expiry, as the browser login counts it). Time is tokio's, so tests pause it.
/// `resource`: the RFC 8707 resource indicator, asked again at each poll of the token endpoint.
pub async fn poll<'c, C>(
    client: &'c DeviceClient,
    http: &'c C,
    details: &'c StandardDeviceAuthorizationResponse,
    resource: Option<&'c str>,
) -> Result<(TokenResp, DateTime<Utc>), DeviceError>
where
    C: AsyncHttpClient<'c>,
{
    let wait = details.expires_in().min(MAX_WAIT);
    let origin = (tokio::time::Instant::now(), Utc::now());
    // The crate checks expiry against this clock: tokio's, so it is monotonic (a clock step
    // does not end the wait early or late) and pausable.
    let clock =
        move || origin.1 + chrono::Duration::from_std(origin.0.elapsed()).unwrap_or_default();
    let requested = Arc::new(StdMutex::new(clock()));
    // Each poll follows its sleep at once, so the end of the sleep is the time of the request.
    let stamp = requested.clone();
    let sleep = move |interval: Duration| {
        let requested = stamp.clone();
        async move {
            tokio::time::sleep(interval.max(MIN_INTERVAL)).await;
            *requested.lock().unwrap_or_else(|p| p.into_inner()) = clock();
        }
    };
    let mut polling = client.exchange_device_access_token(details);
    if let Some(resource) = resource {
        polling = polling.add_extra_param("resource", resource);
    }
    let polling = polling
        .set_time_fn(clock)
        .request_async(http, sleep, Some(wait));
    let outcome = match tokio::time::timeout(wait, polling).await {
        Err(_) => return Err(DeviceError::Expired(wait)),
        Ok(outcome) => outcome,
    };
    match outcome {
        Ok(response) => {
            let at = *requested.lock().unwrap_or_else(|p| p.into_inner());
            Ok((response, at))
        }
        Err(RequestTokenError::ServerResponse(e)) => Err(match e.error() {
            DeviceCodeErrorResponseType::AccessDenied => DeviceError::Denied,
            DeviceCodeErrorResponseType::ExpiredToken => DeviceError::Expired(wait),
            other => DeviceError::Failed(match e.error_description() {
                Some(d) => format!("{other}: {}", printable(d, 300)),
                None => other.to_string(),
            }),
        }),
        Err(RequestTokenError::Request(e)) => {
            Err(DeviceError::Failed(format!("request failed: {e}")))
        }
        Err(RequestTokenError::Parse(e, _)) => {
            Err(DeviceError::Failed(format!("unreadable answer: {e}")))
        }
        Err(RequestTokenError::Other(s)) => Err(DeviceError::Failed(s)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use oauth2::{HttpRequest, HttpResponse};
    use url::Url;

    use super::*;

    /// A token endpoint that answers from a script, recording when each poll came (tokio time
    /// since the start). When the script runs out it keeps answering `authorization_pending`.
    struct Script {
        answers: Mutex<VecDeque<&'static str>>,
        polls: Mutex<Vec<Duration>>,
        start: tokio::time::Instant,
    }

    const PENDING: &str = r#"{"error":"authorization_pending"}"#;
    const SLOW_DOWN: &str = r#"{"error":"slow_down"}"#;
    const DENIED: &str = r#"{"error":"access_denied"}"#;
    const EXPIRED: &str = r#"{"error":"expired_token"}"#;
    const TOKEN: &str =
        r#"{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt"}"#;

    impl Script {
        fn new(answers: &[&'static str]) -> Arc<Script> {
            Arc::new(Script {
                answers: Mutex::new(answers.iter().copied().collect()),
                polls: Mutex::new(Vec::new()),
                start: tokio::time::Instant::now(),
            })
        }

        fn answer(&self, request: &HttpRequest) -> HttpResponse {
            let body = String::from_utf8_lossy(request.body());
            assert!(
                body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"),
                "{body}"
            );
            assert!(body.contains("device_code=DEVICE"), "{body}");
            self.polls.lock().unwrap().push(self.start.elapsed());
            let answer = self.answers.lock().unwrap().pop_front().unwrap_or(PENDING);
            let status = if answer == TOKEN { 200 } else { 400 };
            oauth2::http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(answer.as_bytes().to_vec())
                .unwrap()
        }

        /// Seconds between consecutive polls.
        fn gaps(&self) -> Vec<u64> {
            let polls = self.polls.lock().unwrap();
            polls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
        }
    }

    fn client() -> DeviceClient {
        let url = |p: &str| Url::parse(&format!("https://id.example/{p}")).unwrap();
        let provider = Provider {
            issuer: Some("https://id.example".into()),
            authorization_endpoint: url("auth"),
            token_endpoint: url("token"),
            userinfo_endpoint: None,
            revocation_endpoint: None,
            device_authorization_endpoint: Some(url("device/auth")),
            iss_parameter_supported: false,
        };
        oauth::client(&provider, "c")
            .set_device_authorization_url(DeviceAuthorizationUrl::from_url(url("device/auth")))
    }

    fn details(extra: &str) -> StandardDeviceAuthorizationResponse {
        serde_json::from_str(&format!(
            r#"{{"device_code":"DEVICE","user_code":"ABCD-EFGH","verification_uri":"https://id.example/device"{extra}}}"#
        ))
        .unwrap()
    }

    async fn run(
        details: &StandardDeviceAuthorizationResponse,
        script: &Arc<Script>,
    ) -> Result<(TokenResp, DateTime<Utc>), DeviceError> {
        let client = client();
        let endpoint = {
            let script = script.clone();
            move |request: HttpRequest| {
                let script = script.clone();
                async move { Ok::<_, std::io::Error>(script.answer(&request)) }
            }
        };
        poll(&client, &endpoint, details, None).await
    }

    #[tokio::test(start_paused = true)]
    async fn polls_every_five_seconds_when_the_provider_names_no_interval() {
        let script = Script::new(&[PENDING, PENDING, PENDING, TOKEN]);
        let (token, _) = run(&details(r#","expires_in":600"#), &script)
            .await
            .expect("approved");
        assert_eq!(oauth2::TokenResponse::access_token(&token).secret(), "at");
        assert_eq!(script.gaps(), [5, 5, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_the_interval_the_provider_names() {
        let script = Script::new(&[PENDING, PENDING, TOKEN]);
        run(&details(r#","expires_in":600,"interval":2"#), &script)
            .await
            .expect("approved");
        assert_eq!(script.gaps(), [2, 2]);
        assert_eq!(
            script.polls.lock().unwrap()[0],
            Duration::ZERO,
            "the first poll is at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_for_every_later_poll() {
        let script = Script::new(&[PENDING, SLOW_DOWN, PENDING, SLOW_DOWN, PENDING, TOKEN]);
        run(&details(r#","expires_in":600,"interval":3"#), &script)
            .await
            .expect("approved");
        assert_eq!(script.gaps(), [3, 8, 8, 13, 13]);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_polling_when_the_codes_expire() {
        let script = Script::new(&[]);
        let err = run(&details(r#","expires_in":30,"interval":5"#), &script)
            .await
            .expect_err("never approved");
        assert_eq!(err, DeviceError::Expired(Duration::from_secs(30)));
        let polls = script.polls.lock().unwrap().clone();
        assert!(
            polls.iter().all(|p| *p <= Duration::from_secs(30)),
            "no poll after expires_in: {polls:?}"
        );
        let last = polls.last().copied().unwrap_or_default();
        assert!(
            last >= Duration::from_secs(25),
            "kept polling until the end: {polls:?}"
        );
        assert_eq!(
            script.start.elapsed(),
            Duration::from_secs(30),
            "gave up at expires_in"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_expires_in_is_capped() {
        let script = Script::new(&[]);
        let err = run(
            &details(r#","expires_in":99999999,"interval":600"#),
            &script,
        )
        .await
        .expect_err("never approved");
        assert_eq!(err, DeviceError::Expired(MAX_WAIT));
        assert_eq!(script.start.elapsed(), MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn access_denied_ends_the_wait_at_once() {
        let script = Script::new(&[PENDING, DENIED]);
        let err = run(&details(r#","expires_in":600,"interval":5"#), &script)
            .await
            .expect_err("denied");
        assert_eq!(err, DeviceError::Denied);
        assert_eq!(
            script.polls.lock().unwrap().len(),
            2,
            "no poll after the refusal"
        );
        assert_eq!(script.start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_from_the_provider_is_expiry() {
        let script = Script::new(&[PENDING, EXPIRED]);
        let err = run(&details(r#","expires_in":600,"interval":5"#), &script)
            .await
            .expect_err("expired");
        assert_eq!(err, DeviceError::Expired(Duration::from_secs(600)));
        assert_eq!(script.polls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_of_zero_does_not_spin() {
        let script = Script::new(&[PENDING, PENDING, TOKEN]);
        run(&details(r#","expires_in":600,"interval":0"#), &script)
            .await
            .expect("approved");
        assert_eq!(script.gaps(), [1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_counts_from_its_own_request() {
        let script = Script::new(&[PENDING, PENDING, TOKEN]);
        let before = Utc::now();
        let (_, requested_at) = run(&details(r#","expires_in":600,"interval":7"#), &script)
            .await
            .expect("approved");
        let offset = (requested_at - before).num_seconds();
        assert!(
            (14..=15).contains(&offset),
            "requested {offset} s after the start"
        );
    }

    #[test]
    fn the_method_follows_the_flags_the_display_and_the_provider() {
        use LoginMethod::*;
        let ssh = Some(SkipReason::Ssh);
        let none = Some(SkipReason::NoDisplay);
        assert_eq!(choose_method(false, false, None, true), Ok(Browser));
        assert_eq!(choose_method(false, false, None, false), Ok(Browser));
        assert_eq!(choose_method(false, false, ssh, true), Ok(Device));
        assert_eq!(choose_method(false, false, none, true), Ok(Device));
        assert_eq!(
            choose_method(false, false, ssh, false),
            Ok(Paste),
            "the fallback"
        );
        assert_eq!(
            choose_method(false, true, ssh, true),
            Ok(Paste),
            "asked for"
        );
        assert_eq!(choose_method(false, true, None, true), Ok(Paste));
        assert_eq!(choose_method(true, false, None, true), Ok(Device));
        assert_eq!(
            choose_method(true, false, None, false),
            Err(DeviceError::NoEndpoint)
        );
    }

    #[test]
    fn the_prompt_is_printable_and_names_address_code_and_time() {
        let details: StandardDeviceAuthorizationResponse = serde_json::from_str(
            r#"{"device_code":"D","user_code":"AB\u001b[2JCD","verification_uri":"https://id.example/device","verification_uri_complete":"https://id.example/device?user_code=ABCD","expires_in":600}"#,
        )
        .unwrap();
        let text = DevicePrompt::new(&details).to_string();
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("\n  https://id.example/device\n"), "{text}");
        assert!(text.contains("enter the code  AB\\u{1b}[2JCD"), "{text}");
        assert!(
            text.contains("https://id.example/device?user_code=ABCD"),
            "{text}"
        );
        assert!(text.contains("valid for 10 min"), "{text}");
    }
}
